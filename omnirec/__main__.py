from omnirec.cli import main

main()
