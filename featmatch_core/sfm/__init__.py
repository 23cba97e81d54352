"""Many-view flow: features h5 -> pairs -> matches h5 -> COLMAP database -> pycolmap reconstruction.

The h5 files follow hloc's layout (``h5io``), so either tool can read the other's files.
``reconstruct.reconstruct`` runs the whole chain (``python -m featmatch_core.sfm.reconstruct``);
``pointcloud`` turns a reconstruction, or matches with known poses, into a coloured point cloud
(Open3D, an optional extra). Submodules are imported on use: pycolmap and Open3D load only then.
"""
