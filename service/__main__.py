"""`python -m dynadapter.service`: serve the model repository named by the DYNADAPTER_* environment."""

from dynadapter.service.main import serve
from dynadapter.service.settings import Settings

if __name__ == "__main__":
    serve(Settings())
