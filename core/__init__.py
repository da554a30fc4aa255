"""The bottom layer: settings, metrics, logging, the event loop and process helpers; everything may import it, it imports nothing of ours."""
