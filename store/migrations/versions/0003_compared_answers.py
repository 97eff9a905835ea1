"""answers of one comparison share a key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('asks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('comparison', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_asks_comparison'), ['comparison'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('asks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_asks_comparison'))
        batch_op.drop_column('comparison')
