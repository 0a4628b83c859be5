"""A FastAPI + SQLModel application laid out like full-stack-fastapi-template's backend."""
