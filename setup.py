"""One distribution, ``lightglue_ros``, holding two packages:

* ``featmatch_core``: the ROS-free library (usable with ``pip install -e .`` alone);
* ``lightglue_ros``: the ROS 2 nodes.

It is also the ament_python setup of the ROS package (``colcon build``), which is why the
distribution is named after the ROS package and installs the ament index marker,
package.xml, launch files and parameter files under ``share/lightglue_ros``.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lightglue_ros"

setup(
    name=PACKAGE,  # ament_python requires the setup name to equal the ROS package name
    version="0.1.0",
    description="Learned local-feature matching (SuperPoint, SIFT, ALIKED, DISK + LightGlue) "
                "as a Python library (featmatch_core) and ROS 2 nodes (lightglue_ros)",
    license="Apache-2.0",
    maintainer="featmatch maintainers",
    maintainer_email="maintainers@example.com",
    python_requires=">=3.10",  # ROS 2 Humble ships Python 3.10
    packages=find_packages(include=["featmatch_core", "featmatch_core.*", "lightglue_ros", "lightglue_ros.*"]),
    # assets/: the sample image pair used by `python -m featmatch_core.match` with no arguments
    package_data={"featmatch_core": ["configs/*.yaml", "weights/*.pth", "assets/*/*",
                                     "datasets/megadepth_scenes/*.txt"]},  # MegaDepth scene splits
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=[
        # Install torch FIRST, from the index matching your hardware (CPU or a CUDA version).
        # This loose bound is then already satisfied and pip leaves torch alone; without a torch,
        # pip would fetch the default PyPI wheel, which on Linux x86-64 is a multi-GB CUDA build.
        "torch>=2.1",
        "numpy",
        "scipy",  # Hungarian assignment of ground-truth line labels
        # OpenCV's pip packages (opencv-python, -headless, -contrib...) all provide `cv2` and must
        # not be mixed: with opencv-python already installed, pip adds -headless beside it.
        # Keep one of them (pip uninstall the other), or install with --no-deps.
        "opencv-python-headless",
        "kornia>=0.9,<0.10",
        "omegaconf>=2.3",
        "h5py",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "poselib",
        "pycolmap",
        "rosbags",
    ],
    extras_require={
        # colcon: the install-tree test; onnx + onnxruntime: the ONNX export tests (skipped without)
        "dev": ["pytest", "pytest-timeout", "ruff", "colcon-core", "colcon-ros", "onnx", "onnxruntime"],
        # ONNX export (python -m featmatch_core.export) and model.matcher.backend=onnx
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        # point clouds (featmatch_core.sfm.pointcloud); its Linux wheel needs Debian's libusb-1.0-0.
        # 0.19 is the first with numpy 2 wheels; CI pins the tested version (.ci/run)
        "open3d": ["open3d>=0.19"],
    },
    zip_safe=False,  # configs are read from the file system (config.named_config_dir)
    entry_points={
        "console_scripts": [
            "matcher_node = lightglue_ros.matcher_node:main",
            "stereo_matcher_node = lightglue_ros.stereo_matcher_node:main",
        ],
    },
)
