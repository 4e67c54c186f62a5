"""Reading, pairing and batching the video re-localization benchmark."""
