"""ragbot's Streamlit web app (``streamlit run ui/app.py``).

The pages are thin: each module keeps its logic in plain functions (tested without a browser)
and a ``render_*`` function that lays out widgets. Models and the index are cached resources
(:mod:`ui.resources`), shared by every browser session.
"""
