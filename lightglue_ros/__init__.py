"""ROS 2 front end of featmatch_core: thin rclpy nodes (matcher_node, stereo_matcher_node)
around the ROS-free streaming matcher. Nothing here is imported by featmatch_core."""
