from sid_edge.cli import main

raise SystemExit(main())
