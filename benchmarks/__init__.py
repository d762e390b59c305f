"""trashcam.benchmarks"""
