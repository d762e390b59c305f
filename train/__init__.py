"""trashcam.train"""
