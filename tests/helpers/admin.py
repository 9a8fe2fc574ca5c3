"""The admin bearer token of the in-process test servers (tests.plugin's `admin` fixture)."""

ADMIN_TOKEN = "operator-secret"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
