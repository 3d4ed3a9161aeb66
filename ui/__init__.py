"""The Gradio chat and the command line."""
