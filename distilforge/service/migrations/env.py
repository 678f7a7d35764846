from alembic import context

from distilforge.service.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        from distilforge.service.db import make_engine

        connectable = make_engine(config.get_main_option("sqlalchemy.url")).connect()
    context.configure(connection=connectable, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
