"""The input wall: an image file becomes the model's input tensor here, or a one-line refusal.

preprocess.py is the one preprocessing function every stage calls; imageheader.py reads a
file's format and pixel size before anything is decoded, limits.py holds the sizes every
decoder refuses, dicom.py turns a DICOM into the same grey image the other formats give, and
nativeio.py captures what the C decoders print so it can name the file. folders.py and
sources.py find labelled images on disk and say where each came from; inputview.py shows
what the model sees (`kedge preprocess`).
"""
