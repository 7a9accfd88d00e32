"""The DGC network: spectral and spatial encoder, unrolled mean-shift, centroid assignment.

``network`` holds :class:`~napari_dgc.model.network.DGCModel`; ``meanshift`` the unrolled
mean-shift (autograd function and forward-only paths); ``cpu_kernels`` the numba kernels of the
CPU forward-only path. Imports torch; imports nothing above it (training, inference, GUI).
"""
