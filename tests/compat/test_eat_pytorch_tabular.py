"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 1-1, titanic: the chapter's pandas
preprocessing, its ``nn.Sequential`` net, ``torchkeras.summary(net, input_shape=(15,))`` and its
script-style training loop; then the same training through torchfit, which must give the same
weights and the same epoch figures (712 rows in batches of 8: no partial batch, so the chapter's
mean of batch means equals torchfit's sample-weighted mean).

Changed: ``from torchkeras import summary`` -> ``from torchfit import summary``; the Kaggle CSVs
-> the ``titanic_dir`` stand-in (same columns, rows and missing values); 10 epochs -> 2; the
DataLoaders get a seeded generator so both runs draw the same batches; plots left out. Two
changes for today's libraries, not for torchfit: ``x.astype(np.float32)`` before ``torch.tensor``
(pandas 2's ``get_dummies`` makes bool columns, so ``.values`` is an object array), and
``float(metric)`` for ``metric.item()`` (scikit-learn's ``accuracy_score`` now returns a float).
"""
import datetime

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit


def preprocessing(dfdata):
    dfresult = pd.DataFrame()

    #Pclass
    dfPclass = pd.get_dummies(dfdata['Pclass'])
    dfPclass.columns = ['Pclass_' +str(x) for x in dfPclass.columns]
    dfresult = pd.concat([dfresult,dfPclass],axis = 1)

    #Sex
    dfSex = pd.get_dummies(dfdata['Sex'])
    dfresult = pd.concat([dfresult,dfSex],axis = 1)

    #Age
    dfresult['Age'] = dfdata['Age'].fillna(0)
    dfresult['Age_null'] = pd.isna(dfdata['Age']).astype('int32')

    #SibSp,Parch,Fare
    dfresult['SibSp'] = dfdata['SibSp']
    dfresult['Parch'] = dfdata['Parch']
    dfresult['Fare'] = dfdata['Fare']

    #Carbin
    dfresult['Cabin_null'] = pd.isna(dfdata['Cabin']).astype('int32')

    #Embarked
    dfEmbarked = pd.get_dummies(dfdata['Embarked'],dummy_na=True)
    dfEmbarked.columns = ['Embarked_' + str(x) for x in dfEmbarked.columns]
    dfresult = pd.concat([dfresult,dfEmbarked],axis = 1)

    return(dfresult)


def create_net():
    net = nn.Sequential()
    net.add_module("linear1",nn.Linear(15,20))
    net.add_module("relu1",nn.ReLU())
    net.add_module("linear2",nn.Linear(20,15))
    net.add_module("relu2",nn.ReLU())
    net.add_module("linear3",nn.Linear(15,1))
    net.add_module("sigmoid",nn.Sigmoid())
    return net


def test_titanic(titanic_dir, capsys):
    from torchfit import summary

    # ---- published code: data ----
    dftrain_raw = pd.read_csv(titanic_dir / 'titanic/train.csv')
    dftest_raw = pd.read_csv(titanic_dir / 'titanic/test.csv')

    x_train = preprocessing(dftrain_raw).values
    y_train = dftrain_raw[['Survived']].values

    x_test = preprocessing(dftest_raw).values
    y_test = dftest_raw[['Survived']].values

    assert x_train.shape == (712, 15) and y_train.shape == (712, 1)  # the chapter's printed shapes
    assert x_test.shape == (179, 15) and y_test.shape == (179, 1)

    def loaders():
        g = torch.Generator().manual_seed(0)
        dl_train = DataLoader(TensorDataset(torch.tensor(x_train.astype(np.float32)).float(),torch.tensor(y_train).float()),
                             shuffle = True, batch_size = 8, generator = g)
        dl_valid = DataLoader(TensorDataset(torch.tensor(x_test.astype(np.float32)).float(),torch.tensor(y_test).float()),
                             shuffle = False, batch_size = 8)
        return dl_train, dl_valid

    dl_train, dl_valid = loaders()

    # ---- published code: model ----
    torch.manual_seed(0)
    net = create_net()
    table = summary(net,input_shape=(15,))

    # ---- published code: the script-style training loop ----
    from sklearn.metrics import accuracy_score

    loss_func = nn.BCELoss()
    optimizer = torch.optim.Adam(params=net.parameters(),lr = 0.01)
    metric_func = lambda y_pred,y_true: accuracy_score(y_true.data.numpy(),y_pred.data.numpy()>0.5)
    metric_name = "accuracy"

    epochs = 2
    log_step_freq = 30

    dfhistory = pd.DataFrame(columns = ["epoch","loss",metric_name,"val_loss","val_"+metric_name])
    print("Start Training...")
    nowtime = datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')
    print("=========="*8 + "%s"%nowtime)

    for epoch in range(1,epochs+1):

        net.train()
        loss_sum = 0.0
        metric_sum = 0.0
        step = 1

        for step, (features,labels) in enumerate(dl_train, 1):

            optimizer.zero_grad()

            predictions = net(features)
            loss = loss_func(predictions,labels)
            metric = metric_func(predictions,labels)

            loss.backward()
            optimizer.step()

            loss_sum += loss.item()
            metric_sum += float(metric)
            if step%log_step_freq == 0:
                print(("[step = %d] loss: %.3f, "+metric_name+": %.3f") %
                      (step, loss_sum/step, metric_sum/step))

        net.eval()
        val_loss_sum = 0.0
        val_metric_sum = 0.0
        val_step = 1

        for val_step, (features,labels) in enumerate(dl_valid, 1):
            with torch.no_grad():
                predictions = net(features)
                val_loss = loss_func(predictions,labels)
                val_metric = metric_func(predictions,labels)
            val_loss_sum += val_loss.item()
            val_metric_sum += float(val_metric)

        info = (epoch, loss_sum/step, metric_sum/step,
                val_loss_sum/val_step, val_metric_sum/val_step)
        dfhistory.loc[epoch-1] = info

        print(("\nEPOCH = %d, loss = %.3f,"+ metric_name + \
              "  = %.3f, val_loss = %.3f, "+"val_"+ metric_name+" = %.3f")
              %info)
        nowtime = datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')
        print("\n"+"=========="*8 + "%s"%nowtime)

    print('Finished Training...')
    # ---- end of published code ----

    # The same training in torchfit's three steps.
    dl_train, dl_valid = loaders()
    torch.manual_seed(0)
    model = torchfit.Model(create_net())
    model.compile(loss_func=nn.BCELoss(), optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                  metrics_dict={metric_name: metric_func})
    history = model.fit(epochs, dl_train, dl_val=dl_valid, log_step_freq=log_step_freq)

    out = capsys.readouterr().out
    assert [tuple(r) for r in table.itertuples(index=False)] == [
        ("Linear-1", "[-1, 20]", 320), ("ReLU-2", "[-1, 20]", 0), ("Linear-3", "[-1, 15]", 315),
        ("ReLU-4", "[-1, 15]", 0), ("Linear-5", "[-1, 1]", 16), ("Sigmoid-6", "[-1, 1]", 0)]  # the chapter's table
    assert "Total params: 651" in out
    for key, value in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert list(history.columns) == list(dfhistory.columns)
    for column in ("loss", "accuracy"):
        assert history[column].tolist() == pytest.approx(dfhistory[column].tolist(), rel=1e-6)
    # Validation has a last batch of 3 (179 rows): the chapter's mean of batch means is off there,
    # torchfit's figure is the exact one over the 179 rows.
    assert history["val_loss"].iloc[-1] == pytest.approx(model.evaluate(dl_valid)["val_loss"])
