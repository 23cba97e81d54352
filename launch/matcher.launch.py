"""Monocular matcher: ros2 launch lightglue_ros matcher.launch.py [argument:=value ...]

Arguments: namespace (of the node and its topics), config (parameter file, default the
installed config/matcher.yaml), image / camera_info / depth (topics remapped to the node's
'image', 'camera_info', 'depth'), extractor / matcher / device (override the parameter file
when given; empty, the default, keeps the file's value), use_sim_time (true when replaying a
bag with --clock), log_level.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

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
            executable="matcher_node",
            name="matcher",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("config"), overrides],
            remappings=[
                ("image", LaunchConfiguration("image")),
                ("camera_info", LaunchConfiguration("camera_info")),
                ("depth", LaunchConfiguration("depth")),
            ],
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
            default_value=os.path.join(share, "config", "matcher.yaml"),
            description="parameter file",
        ),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="input image topic"),
        DeclareLaunchArgument(
            "camera_info", default_value="/camera/camera_info", description="camera info topic"
        ),
        DeclareLaunchArgument(
            "depth",
            default_value="/camera/depth/image_raw",
            description="aligned depth topic (used with use_depth: true)",
        ),
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
