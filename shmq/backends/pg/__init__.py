# SPDX-License-Identifier: Apache-2.0
"""Parts of the PostgreSQL backend (shmq.backends.postgres): ``schema``, the
tables and their versioned migrations."""
