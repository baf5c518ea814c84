"""The web UI (``pangu-draw ui``): gradio over the library calls the CLI makes."""
