"""IP warm-up: the day each warming source is on, its daily caps, and their status."""
