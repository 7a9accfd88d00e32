"""Keys of the napari layer metadata that napari-dgc writes and reads, in one place.

Layers carry what the panels need to find each other's data without calling each other: a
cube layer knows its file, a cluster layer its run and checkpoint, a class layer its mapping.
Plain strings, so saved napari sessions and other plugins can read them.
"""

#: Cube image layers (from our reader): the cube's file, band axis, format and provenance.
CUBE_PATH = "dgc_cube_path"
BAND_AXIS = "dgc_band_axis"
FORMAT = "dgc_format"
PROVENANCE = "dgc_provenance"
#: Pseudo-RGB layers: the bands, their wavelengths and how they were chosen.
RGB_BANDS = "dgc_rgb_bands"
RGB_WAVELENGTHS = "dgc_rgb_wavelengths"
RGB_METHOD = "dgc_rgb_method"
#: Cluster, class and mask layers: the name of the cube layer they belong to.
CUBE_LAYER = "dgc_cube_layer"
#: Cluster layers: the run folder, the checkpoint shown, K, and the value added to cluster ids.
RUN = "dgc_run"
CHECKPOINT = "dgc_checkpoint"
N_CLUSTERS = "dgc_n_clusters"
LABEL_OFFSET = "dgc_label_offset"
#: Class layers: the class mapping (ClassMapping JSON) that made them.
MAPPING = "dgc_mapping"
#: Mask layers imported from a file: that file.
MASK_FILE = "dgc_mask_file"
