"""Settings of the example Django project: one PostgreSQL database (psycopg 3) from $DATABASE_URL, and anchor-py."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/anchor_example"))

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]  # testserver: Django's test client
USE_TZ = True
ROOT_URLCONF = "examples.django_project.project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "anchor_py.contrib.django",  # manage.py anchor_install_sql, anchor_register, anchor_worker
    "examples.django_project.shop",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", "postgres"),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}

ANCHOR = {
    "TASKGEN": "examples.zgen.taskgen",
    "EXECUTOR": "examples.django_project.shop.tasks:make_executor",
}
