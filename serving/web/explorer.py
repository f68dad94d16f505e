"""The feed explorer."""

from flask import Blueprint

explorer = Blueprint("explorer", __name__)
