"""The bottom layer: settings, metrics, logging, the event loop and process helpers.

Everything may import it; it imports nothing of ours."""
