"""Analysis: run directories -> one table (collect), figure kinds (figures), Optuna views (sweep), and the
report page that `hmem report` writes (report). Figure specs live as data in analysis/*.yaml at the repo root."""
