"""Robust estimators. Each returns ``{"model", "inliers", "success"}``; a failure is not an exception."""
