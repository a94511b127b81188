"""The main job and the demonstrations, built on the public API."""
