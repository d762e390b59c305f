"""trashcam.calibration"""
