"""Stereo matcher: ros2 launch lightglue_ros stereo_matcher.launch.py [argument:=value ...]

Arguments: namespace, config (default the installed config/stereo_matcher.yaml), left_image,
right_image, left_camera_info, right_camera_info (topics remapped to the node's 'left/image',
'right/image', 'left/camera_info', 'right/camera_info'; rectified images), extractor / matcher /
device (override the parameter file when given; empty, the default, keeps the file's value),
use_sim_time, log_level.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

TOPICS = {
    "left_image": ("left/image", "/stereo/left/image_rect"),
    "right_image": ("right/image", "/stereo/right/image_rect"),
    "left_camera_info": ("left/camera_info", "/stereo/left/camera_info"),
    "right_camera_info": ("right/camera_info", "/stereo/right/camera_info"),
}
# launch arguments that override the parameter file only when given (empty: the file's value)
MODEL_ARGUMENTS = {
    "extractor": ("sift", "superpoint", "aliked", "disk"),
    "matcher": ("nn", "lightglue", "gluestick"),
    "device": ("auto", "cuda", "cpu"),
}


def _node(context):
    overrides = {}
    for name in MODEL_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    overrides["use_sim_time"] = LaunchConfiguration("use_sim_time").perform(context) == "true"
    return [
        Node(
            package="lightglue_ros",
            executable="stereo_matcher_node",
            name="stereo_matcher",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("config"), overrides],
            remappings=[(name, LaunchConfiguration(arg)) for arg, (name, _) in TOPICS.items()],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    share = get_package_share_directory("lightglue_ros")
    arguments = [
        DeclareLaunchArgument(
            "namespace", default_value="", description="namespace of the node and its topics"
        ),
        DeclareLaunchArgument(
            "config",
            default_value=os.path.join(share, "config", "stereo_matcher.yaml"),
            description="parameter file",
        ),
        *[
            DeclareLaunchArgument(arg, default_value=default, description=f"topic remapped to '{name}'")
            for arg, (name, default) in TOPICS.items()
        ],
        DeclareLaunchArgument(
            "extractor",
            default_value="",
            choices=["", *MODEL_ARGUMENTS["extractor"]],
            description="feature extractor (empty: the parameter file's)",
        ),
        DeclareLaunchArgument(
            "matcher",
            default_value="",
            choices=["", *MODEL_ARGUMENTS["matcher"]],
            description="matcher (empty: the parameter file's; lightglue and gluestick need weights)",
        ),
        DeclareLaunchArgument(
            "device",
            default_value="",
            choices=["", *MODEL_ARGUMENTS["device"]],
            description="compute device (empty: the parameter file's)",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            choices=["true", "false"],
            description="use /clock (bag replay)",
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
