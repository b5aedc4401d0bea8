from experiment_impact_tracker.cli import main

raise SystemExit(main())
