"""asks no longer store used_tokens: it is low_res_tokens + high_res_tokens, and nothing read it

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('asks', schema=None) as batch_op:
        batch_op.drop_column('used_tokens')


def downgrade() -> None:
    with op.batch_alter_table('asks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('used_tokens', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE asks SET used_tokens = low_res_tokens + high_res_tokens")
