from impact_exporter.cli import main

raise SystemExit(main())
