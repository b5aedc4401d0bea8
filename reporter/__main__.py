from impact_reporter.cli import main

raise SystemExit(main())
