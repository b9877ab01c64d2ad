"""The bottom layer: paths, constants, errors, the run folder's plain files, progress lines, devices."""
