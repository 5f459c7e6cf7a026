"""grokscale orchestrator: study configs, the Ray driver, Optuna search, MLflow tracking, analysis."""
