"""trashcam.edge: the TensorFlow-free core that ships to a device.

Bundle reading and checking, image decoding and the preprocessing contract, the interpreter wrapper, sources and
sinks. It imports nothing else of trashcam, and never TensorFlow or Keras.
"""
__version__ = "0.1.0"
