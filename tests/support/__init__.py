"""Test support for bootsecrets: real servers (moto) and faithful doubles (IMDSv2)."""
