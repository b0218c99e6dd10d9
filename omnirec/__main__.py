from omnirec.cli import app

app()
