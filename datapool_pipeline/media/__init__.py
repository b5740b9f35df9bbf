"""Decoding: images with Pillow, video frames streamed through ffmpeg (ffmpeg-python)."""
