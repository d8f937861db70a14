"""Renderers, one per output format: JUnit (junit.py), Markdown (markdown.py), HTML (html.py), the console."""
