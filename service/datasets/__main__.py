from service.datasets.cli import app

app(prog_name="calib dataset")
