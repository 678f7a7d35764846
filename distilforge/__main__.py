from distilforge.cli import main

main()
