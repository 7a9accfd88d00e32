"""GUI state as evented models (no Qt, napari or magicgui): the panels render them and talk through them."""
