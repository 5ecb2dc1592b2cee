"""The local web app: a JSON API and one page over prediction, comparison, explanation, frames.

`app.create_app` builds the FastAPI application (the model loads once, requests take turns
on it); `app.run` serves it with uvicorn on 127.0.0.1. Uploads are checked and decoded in
`uploads`, video frame ranking runs as background jobs in `jobs`, and `bot` is the generate
panel of `thumbview serve --bot`. The package exports nothing: importing it stays light.
"""

__all__: list[str] = []
