"""conversation trees: each message names its parent, each session its active leaf

A transcript stored before this revision becomes a single branch: every message's parent is the one
stored before it, and the last message is the active leaf. Nothing is lost. Downgrading keeps the
active path of each session and deletes the other branches (the earlier schema has no room for them).

Revision ID: 0002
Revises: 0001
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_messages_parent_id', 'messages', ['parent_id'], ['id'], ondelete='CASCADE')
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('active_leaf_id', sa.Integer(), nullable=True))
    op.execute("""
        UPDATE messages SET parent_id = (
            SELECT prev.id FROM messages AS prev
            WHERE prev.session_id = messages.session_id AND prev.seq = (
                SELECT MAX(m.seq) FROM messages AS m
                WHERE m.session_id = messages.session_id AND m.seq < messages.seq))
    """)
    op.execute("""
        UPDATE sessions SET active_leaf_id = (
            SELECT m.id FROM messages AS m WHERE m.session_id = sessions.id
            AND m.seq = (SELECT MAX(seq) FROM messages WHERE session_id = sessions.id))
    """)


def downgrade() -> None:
    op.execute("""
        DELETE FROM messages WHERE id NOT IN (
            WITH RECURSIVE path(id, parent_id) AS (
                SELECT m.id, m.parent_id FROM messages AS m JOIN sessions AS s ON m.id = s.active_leaf_id
                UNION ALL
                SELECT m.id, m.parent_id FROM messages AS m JOIN path ON m.id = path.parent_id)
            SELECT id FROM path)
    """)
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('active_leaf_id')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint('fk_messages_parent_id', type_='foreignkey')
        batch_op.drop_column('parent_id')
