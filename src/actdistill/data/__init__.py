"""Demonstration datasets in the robomimic / LIBERO HDF5 layout."""
