from application.cli import main

main()
