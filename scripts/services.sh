# Sourced by scripts/test.sh: starts what the tests need and exports where it is.
# PostgreSQL is started in the next step of the project; nothing else is needed yet.
true
