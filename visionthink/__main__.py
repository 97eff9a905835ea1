from visionthink.cli import main

raise SystemExit(main())
