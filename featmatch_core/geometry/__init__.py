"""Geometry shared by evaluation, training and the ROS nodes (written once)."""
