"""trashcam.convert"""
