from treeclip.cli import main

main()
