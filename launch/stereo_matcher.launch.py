"""Stereo matcher: ros2 launch lightglue_ros stereo_matcher.launch.py [argument:=value ...]

Arguments: namespace, config (default the installed config/stereo_matcher.yaml), left_image,
right_image, left_camera_info, right_camera_info (topics remapped to the node's 'left/image',
'right/image', 'left/camera_info', 'right/camera_info'; rectified images), device,
use_sim_time, log_level.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("lightglue_ros")
    topics = {
        "left_image": ("left/image", "/stereo/left/image_rect"),
        "right_image": ("right/image", "/stereo/right/image_rect"),
        "left_camera_info": ("left/camera_info", "/stereo/left/camera_info"),
        "right_camera_info": ("right/camera_info", "/stereo/right/camera_info"),
    }
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
            for arg, (name, default) in topics.items()
        ],
        DeclareLaunchArgument(
            "device", default_value="auto", choices=["auto", "cuda", "cpu"], description="compute device"
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            choices=["true", "false"],
            description="use /clock (bag replay)",
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
    ]
    node = Node(
        package="lightglue_ros",
        executable="stereo_matcher_node",
        name="stereo_matcher",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("config"),
            {
                "device": LaunchConfiguration("device"),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[(name, LaunchConfiguration(arg)) for arg, (name, _) in topics.items()],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
